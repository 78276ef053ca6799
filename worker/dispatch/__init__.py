"""What runs in a worker node's main process besides Celery's consumer: the router (intake →
job store), the dispatcher (job store → the node's Celery consumer), the housekeeper (leases,
accounts file, janitor). See service.py."""
