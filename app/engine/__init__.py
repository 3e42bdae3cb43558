"""The inference engine: the only package that imports llama_cpp.

``model`` loads a GGUF file and tokenizes; ``sampling`` builds per-request
sampler chains with the grammar fast path; ``text`` turns tokens into text and
finds stop strings; ``scheduler`` owns the one engine thread with its slots and
the continuous batch.
"""
