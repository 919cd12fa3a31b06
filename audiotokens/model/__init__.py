"""The classifier and what ships with it: parts (embedders, encoders, poolings, heads) chosen by name from
registries, objectives, metrics, the portable bundle, its AudioTokenizer, the ONNX export and the model card.
A new encoder, pooling or head is a class plus a registry entry in parts.py.
"""
