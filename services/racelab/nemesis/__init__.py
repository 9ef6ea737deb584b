"""The nemesis: faults injected into a running lab, as Jepsen's nemesis does.

faults.py says what a fault is (kind, target) and parses a schedule; runtimes.py knows how to
do one natively (signals to supervisor's processes; supervisor restarts what was killed) or with
Docker Compose; record.py logs each fault (JSON Lines in the run's results folder, and the
lab's `faults` table, which the checker exporter turns into a metric for the dashboards).
`python -m racelab.nemesis` runs a schedule beside `make load`; racelab.clients.chaos runs a
burst per fault kind and judges the guarded variants.
"""
