"""`make demo`: run every step on real or simulated default data, write figures and a report."""
