"""Developer tools: the one-command demo, a throwaway Mosquitto, and the live terminal view."""
