"""Everything that trains or orchestrates: the config, the builders, the loop's parts and the commands."""
