"""The network: links between the hosts, as they are made, shaped and changed.

Owns the emulated testbed on this Linux host (namespaces, bridge, sshd, CPU quotas), tc
bandwidth shaping of device links with its state files, and bandwidth schedules. Built on
the fleet; knows nothing of planning or runs (what needs a link measured after shaping
passes the measurement in).
"""
