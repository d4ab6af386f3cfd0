from automation.cli import app

app()
