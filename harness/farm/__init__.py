"""Many devices: the job scheduler, inventories, leases, health checks, JUnit."""
