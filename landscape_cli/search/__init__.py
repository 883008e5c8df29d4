"""Searches over weight perturbations (pure: a function in, numbers out): projected ascent
for worst-case sharpness, bisection for the PAC-Bayes σ."""
