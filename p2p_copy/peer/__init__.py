"""The asyncio peer: the public coroutines (api), the sender and receiver drivers, the relay
link, the key exchange over it, the reconnect policy, and the blocking and background twins.
"""
