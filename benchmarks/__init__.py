"""Side-by-side benchmarks against peer libraries; ``make bench`` runs them all."""
