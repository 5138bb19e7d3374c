"""The notebook's browser as the other peer: drop files into the kernel, save to this computer.

``drop.py`` runs the kernel's side (which relay, the transfer, the retries after a page
reload); ``panel.py`` is the widget whose JavaScript, web/static/widget.js, is the
browser peer of web/src. Nothing here loads until p2p_copy.drop or p2p_copy.offer is used.
"""
