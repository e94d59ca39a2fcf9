"""Metrics, implemented once and shared by every task, report and benchmark."""
