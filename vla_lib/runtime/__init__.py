"""The runtime from simulation to the robot: one control loop, chunk execution, limits, the sensor guard, faults."""
