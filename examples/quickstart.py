"""wxens in a few lines: a truth, a 20-member ensemble from the committed checkpoints, its
scores against the truth and persistence, and the HTML report.

Run from the repository root (the checkpoints are in checkpoints/default):

    python examples/quickstart.py [OUT]
"""

import sys

import wxens

out = sys.argv[1] if len(sys.argv) > 1 else "out/quickstart"

# 6 days of the truth world after a 25-day spin-up: 6-hourly analyses on the 33 x 64 grid.
truth = wxens.simulate_truth(days=6, spinup_days=25, seed=2031)

# The four committed SFNO checkpoints, each with bred-vector pairs (48 h RMSEs in m2 s-1).
members = wxens.load_members("checkpoints/default")
rmse_48h = {"psi_upper": 3.69e6, "psi_lower": 1.95e6}
bred = [wxens.bred_vector_perturbation(member, rmse_48h) for member in members]

# 20 members from the first analysis, 5 days ahead; member k always the same numbers.
ensemble = wxens.run_ensemble(
    members, truth, truth.time[0], 20, "5D", perturbation=bred, checkpoint_group=2
)

scores = wxens.score(ensemble, truth, references={"persistence": "persistence"})
crps = scores.crps.sel(region="global", variable="psi_upper")
print(crps.to_pandas().T.iloc[::4])  # fair CRPS (m2 s-1) by lead, every day
print(wxens.report(scores, f"{out}/report"))
