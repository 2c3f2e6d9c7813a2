"""Index management: create each mirror's index from its config, or check the existing one."""
