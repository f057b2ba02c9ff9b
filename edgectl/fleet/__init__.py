"""The fleet: the hosts of a run and how to reach them.

Owns the inventory format, SSH connections and host-key trust, commands and file transfers
on a host (`hosts`), agent processes started on hosts and their output streams (`agents`,
`sessions`), where a host keeps edgectl's files (`layout`), provisioning and host facts.
The lowest layer of the coordinator: it imports nothing of edgectl's but `errors` and
`yaml_text`.
"""
