"""`rooms loadtest`: a load generator for durable-rooms (see loadtest.cli)."""
