from hashbench.cli import app

app(prog_name="hashbench")
