"""Evaluation: task metrics, language-model scores, label-free fidelity, the dense-evaluation cache."""
