"""Monitoring and maintenance: drift, safety, the retraining policy, the monitor job."""
