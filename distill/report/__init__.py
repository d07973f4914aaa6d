"""Reports: comparisons, studies, statistics, fits and plots."""
