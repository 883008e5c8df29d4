"""Pure tensor algorithms: operator in, numbers out."""
