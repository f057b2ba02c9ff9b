"""The runtime on devices and the server: wire protocol, agents, strategies, data, events.

Imports only torch, numpy, psutil, safetensors, Pillow and the standard library, so a
device needs nothing else.
"""
