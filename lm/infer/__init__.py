"""Using a trained model: sampling and prefill + KV-cache decoding, beam
search, sentence embeddings, attention maps."""
