"""The dimensions of the robot's data, in one place (no imports: any module may use them)."""

POSE_DIMS = 6  # x, y, z (mm), a, b, r (deg): the end-effector pose, its deltas, what the loss and metrics cover
ACTION_DIM = 7  # the 6 pose deltas + a constant gripper value (the action interface is 7-D)
GRIPPER = 6  # index of the gripper dimension in an action
ALINE_POINTS = 1025  # points of one OCT A-line
SENSOR_CHANNELS = 1 + ALINE_POINTS  # force + A-line: one row of a sensor window
CONTACT_DIMS = 4  # the contact memory: in contact (0/1), tip displacement since contact onset x, y, z (mm)
