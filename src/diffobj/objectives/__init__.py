"""What is trained: noise schedules, loss weightings, training densities, the
scales they are compared on, and the bounds (ELBOs) the weightings are sums of.
"""
