"""The scheduling decision core: pure objects, no I/O, no asyncio, time passed in as `now`.

The HTTP proxy (ThunderAgent/app.py) and the discrete-event simulator (harness/sim/des.py) drive the same
policy objects through the interface in `base.py`.
"""
