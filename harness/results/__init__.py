"""What happened: the results store and the dashboard."""
