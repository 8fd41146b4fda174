"""EK-100 annotations and relevance, synthetic data, preparation, input pipelines, tokenizer."""
