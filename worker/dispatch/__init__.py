"""What runs in a worker node's main process besides Celery's consumer: the router (intake →
job store), the dispatcher (job store → ready queue), the housekeeper (leases, accounts file,
janitor). See service.py."""
