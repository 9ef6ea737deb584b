"""Clients that drive a running lab: burst, load (Locust), chaos (the nemesis), matrix. They only
talk to the lab through its gateway and read the tables the checker reads; the runtime that
starts the lab (racelab.lab) knows nothing of them."""
