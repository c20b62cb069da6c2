"""Views over stored rows: the evidence per (run, attack, ε), paper-style tables, the leaderboard, plots, and the
regression gate that reruns golden runs and compares them sample for sample."""
