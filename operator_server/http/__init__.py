"""REST handlers: tasks, worker endpoints, health, and the error mapping they share."""
