from django.db import migrations


class Migration(migrations.Migration):
    """Budget reservations live in ``ChatTurn.reserved_tokens`` (0003); the standalone rows are gone."""

    dependencies = [
        ("chat", "0003_turn_reserved_tokens"),
    ]

    operations = [
        migrations.DeleteModel(name="BudgetReservation"),
    ]
