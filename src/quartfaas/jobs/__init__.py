"""Jobs that combine the runtime, the workload and a report (``quartfaas run``)."""
