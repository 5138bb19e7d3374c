"""Where bytes come from and where they land: source files (sources), the receiver's folder
(destination), pipes and memory (streams). Blocking calls; the peer runs them off its loop.
"""
