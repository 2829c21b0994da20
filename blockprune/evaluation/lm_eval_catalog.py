"""The bundled lm-eval tasks: their template files, answer choices per task, and MMLU's subjects by category.

Plain tables, no lm-eval import: validation (``resolve_task_names``), the generated MMLU YAMLs and the tests
read them. The task definitions themselves are the YAML templates in ``tasks/``.
"""

from __future__ import annotations

# friendly (= standard lm-eval) name -> shipped template file
TASK_TEMPLATES: dict[str, str] = {
    "piqa": "piqa.yaml",
    "winogrande": "winogrande.yaml",
    "arc_easy": "arc_easy.yaml",
    "arc_challenge": "arc_challenge.yaml",
    "hellaswag": "hellaswag.yaml",
    "boolq": "boolq.yaml",
    "openbookqa": "openbookqa.yaml",
    "rte": "rte.yaml",
    "cb": "cb.yaml",
    "sst2": "sst2.yaml",
    "commonsense_qa": "commonsense_qa.yaml",
    "copa": "copa.yaml",
}

# Number of answer choices per task (MMLU subjects: 4); used by tests and sanity checks.
N_CHOICES: dict[str, int] = {
    "piqa": 2,
    "winogrande": 2,
    "arc_easy": 4,  # a handful of ARC questions have 3 or 5 options
    "arc_challenge": 4,
    "hellaswag": 4,
    "boolq": 2,
    "openbookqa": 4,
    "rte": 2,
    "cb": 3,
    "sst2": 2,
    "commonsense_qa": 5,
    "copa": 2,
    "mmlu": 4,
}

# lm-eval's MMLU subject -> category table (lm_eval/tasks/mmlu/_generate_configs.py).
MMLU_SUBJECTS: dict[str, str] = {
    "abstract_algebra": "stem",
    "anatomy": "stem",
    "astronomy": "stem",
    "business_ethics": "other",
    "clinical_knowledge": "other",
    "college_biology": "stem",
    "college_chemistry": "stem",
    "college_computer_science": "stem",
    "college_mathematics": "stem",
    "college_medicine": "other",
    "college_physics": "stem",
    "computer_security": "stem",
    "conceptual_physics": "stem",
    "econometrics": "social_sciences",
    "electrical_engineering": "stem",
    "elementary_mathematics": "stem",
    "formal_logic": "humanities",
    "global_facts": "other",
    "high_school_biology": "stem",
    "high_school_chemistry": "stem",
    "high_school_computer_science": "stem",
    "high_school_european_history": "humanities",
    "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences",
    "high_school_macroeconomics": "social_sciences",
    "high_school_mathematics": "stem",
    "high_school_microeconomics": "social_sciences",
    "high_school_physics": "stem",
    "high_school_psychology": "social_sciences",
    "high_school_statistics": "stem",
    "high_school_us_history": "humanities",
    "high_school_world_history": "humanities",
    "human_aging": "other",
    "human_sexuality": "social_sciences",
    "international_law": "humanities",
    "jurisprudence": "humanities",
    "logical_fallacies": "humanities",
    "machine_learning": "stem",
    "management": "other",
    "marketing": "other",
    "medical_genetics": "other",
    "miscellaneous": "other",
    "moral_disputes": "humanities",
    "moral_scenarios": "humanities",
    "nutrition": "other",
    "philosophy": "humanities",
    "prehistory": "humanities",
    "professional_accounting": "other",
    "professional_law": "humanities",
    "professional_medicine": "other",
    "professional_psychology": "social_sciences",
    "public_relations": "social_sciences",
    "security_studies": "social_sciences",
    "sociology": "social_sciences",
    "us_foreign_policy": "social_sciences",
    "virology": "other",
    "world_religions": "humanities",
}
MMLU_CATEGORIES: tuple[str, ...] = ("stem", "humanities", "social_sciences", "other")
