"""The protocol without I/O: messages, the transfer state machines, codes, the PAKE and the
sealed channel, digests, compression, path rules, the receiver's policy, the objects codec.

Nothing here imports asyncio, websockets or socket (tests/test_layers.py keeps it so):
events and bytes go in, events and wire messages come out, and the clock and the
environment are passed in by the caller.
"""
