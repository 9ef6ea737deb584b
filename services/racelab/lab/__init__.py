"""Running the lab: the services description, the native mode, the burst client."""
