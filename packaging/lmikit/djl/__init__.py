"""Local emulation of DJL Serving: djl_python stand-ins, entry-point loading and a replay of the Java frontend."""
