"""The undefended control: MAIL with standard (clean) training."""
from robustmed.defenses.base import DEFENSES, DefenseInfo

DEFENSES.register("none", DefenseInfo(
    name="none",
    family="control",
    reference="Dhar et al., KDD'26 (MAIL, standard training)",
    description="standard training, no defense: the baseline every defense must beat",
))
