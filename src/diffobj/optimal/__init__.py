"""The optimal loss: its estimators per noise level (``estimators``) and the curve
over log-SNR that training and figures read (``curve``).
"""
