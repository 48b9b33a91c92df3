"""Stage 4, the networks and the model file: architecture and adaptation settings (torch-free),
the scale-space and plain autoencoders, their losses, devices, the model card and the
checkpoint (weights and card in one safetensors file, no code execution), the card in words.

May import: ssae.io, ssae.preprocessing, ssae.scoring.
"""
