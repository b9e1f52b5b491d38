"""Clients of what the orchestrator drives: containers, images, forges, Ansible, agent CLIs.

Nothing here knows of Temporal or of the database: activities (activities/) call these with plain
values and turn their errors into what Temporal should do.
"""
