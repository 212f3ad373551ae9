"""A model directory and what runs it: inference, the n-gram part and its fusion, metrics."""
