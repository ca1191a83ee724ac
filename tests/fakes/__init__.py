"""Stand-ins that speak real protocols (GitHub REST and git smart HTTP, ...), started by the tests themselves."""
