"""The V2 / Open Inference Protocol itself, for every door: the core that
holds its rules (core.py), tensors to numpy and back (codec.py), content
types (content.py), compressed bodies (compression.py) and adaptive batching
(batching.py). Neither Flask nor gunicorn is imported here."""
