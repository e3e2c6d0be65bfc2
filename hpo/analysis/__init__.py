"""Reading finished studies: listings, reports and figures, the best trial and its retraining,
narrowing, and comparisons of search strategies."""
