from hashbench.cli import main

main()
