# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_leadloop_global_optspecs
    string join \n h/help V/version
end

function __fish_leadloop_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_leadloop_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_leadloop_using_subcommand
    set -l cmd (__fish_leadloop_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c leadloop -n "__fish_leadloop_needs_command" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_needs_command" -s V -l version -d 'Print version'
complete -c leadloop -n "__fish_leadloop_needs_command" -f -a "run" -d 'Run the daemon'
complete -c leadloop -n "__fish_leadloop_needs_command" -f -a "demo" -d 'See the whole loop in a minute: a sample Salesforce org on loopback, accelerated time, no config needed'
complete -c leadloop -n "__fish_leadloop_needs_command" -f -a "validate" -d 'Check a config file: syntax, types, unknown keys, references. Exit 78 if invalid. With --connect, also reach every configured peer; exit 1 if one fails'
complete -c leadloop -n "__fish_leadloop_needs_command" -f -a "export" -d 'Write a portable, checksummed backup of the state directory'
complete -c leadloop -n "__fish_leadloop_needs_command" -f -a "import" -d 'Load a backup into an empty state directory (verified before anything is written)'
complete -c leadloop -n "__fish_leadloop_needs_command" -f -a "simulate" -d 'Run the real engine on events in virtual time and print the effects as JSON lines'
complete -c leadloop -n "__fish_leadloop_needs_command" -f -a "leads" -d 'Leads: one lead\'s stage, score (with its reasons), hand-off and history'
complete -c leadloop -n "__fish_leadloop_needs_command" -f -a "report" -d 'Reports from the history'
complete -c leadloop -n "__fish_leadloop_needs_command" -f -a "sla" -d 'Open hand-offs and their SLA state'
complete -c leadloop -n "__fish_leadloop_needs_command" -f -a "email" -d 'Email tools: send a test message, preview a template'
complete -c leadloop -n "__fish_leadloop_needs_command" -f -a "nurture" -d 'Nurture tracks: list them, preview a lead\'s upcoming sends'
complete -c leadloop -n "__fish_leadloop_needs_command" -f -a "quarantine" -d 'Records the CRM sync set aside (unmappable, unknown owner), with the reason'
complete -c leadloop -n "__fish_leadloop_needs_command" -f -a "pause" -d 'Blast-radius guard: pause email, nurture email or CRM write-back (kept in the store, so a restart honours it); held work stays in the outbox. Without a scope: what is paused and held'
complete -c leadloop -n "__fish_leadloop_needs_command" -f -a "resume" -d 'Lift a pause and release what it held'
complete -c leadloop -n "__fish_leadloop_needs_command" -f -a "approve" -d 'Release the nurture email a surge hold keeps back (or drop it with --reject); with --dry-run, show how many and a sample'
complete -c leadloop -n "__fish_leadloop_needs_command" -f -a "crm" -d 'CRM write-back: the writes the CRM refused for good, and putting them back in the queue'
complete -c leadloop -n "__fish_leadloop_needs_command" -f -a "sync" -d 'One sync pass against the configured CRM (and one round of write-back), with counts'
complete -c leadloop -n "__fish_leadloop_using_subcommand run" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand run" -l state-dir -d 'Overrides `daemon.state_dir`' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand run" -l admin-listen -d 'Overrides `daemon.admin_listen` (default 127.0.0.1:9477)' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand run" -l log-format -d 'Overrides `daemon.log_format`' -r -f -a "human\t''
json\t''"
complete -c leadloop -n "__fish_leadloop_using_subcommand run" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand demo" -l speed -d 'Virtual seconds per real second: 3600 runs an hour a second, so the 72-hour ladder takes about a minute' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand demo" -l duration -d 'How much virtual time to run' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand demo" -l leads -d 'Leads in the sample org' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand demo" -l smtp -d 'Deliver the emails to this SMTP server (plain, no auth) instead of writing .eml files' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand demo" -l dir -d 'Where to put the state and the emails; default: a new directory under the system\'s temporary directory' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand demo" -l seed -d 'The sample org\'s random seed (the same seed, the same story)' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand demo" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand validate" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand validate" -l connect -d 'Also connect, once the file is valid: log in to the CRM, open an SMTP session (EHLO, STARTTLS, AUTH; no mail), reach each person\'s calendar and the PostgreSQL store; one line per check with its time and, if it failed, why'
complete -c leadloop -n "__fish_leadloop_using_subcommand validate" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand export" -s c -l config -d 'The config file (for `daemon.state_dir` and store settings); without it and without `--state-dir`, `$LEADLOOP_CONFIG` or /etc/leadloop/leadloop.toml' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand export" -l state-dir -d 'The state directory; overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand export" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand import" -s c -l config -d 'The config file (for `daemon.state_dir` and store settings); without it and without `--state-dir`, `$LEADLOOP_CONFIG` or /etc/leadloop/leadloop.toml' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand import" -l state-dir -d 'The state directory; overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand import" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand simulate" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand simulate" -l events -d 'Events, one JSON object per line, ordered by `at`' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand simulate" -l until -d 'Run the clock to this instant (RFC 3339); default: until no timer is left, at most 400 days past the last event' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand simulate" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand leads; and not __fish_seen_subcommand_from list show" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand leads; and not __fish_seen_subcommand_from list show" -f -a "list" -d 'Leads with their stage, score, owner and CRM status'
complete -c leadloop -n "__fish_leadloop_using_subcommand leads; and not __fish_seen_subcommand_from list show" -f -a "show" -d 'A lead\'s stage, score with the rules and activities behind it, hand-off and history'
complete -c leadloop -n "__fish_leadloop_using_subcommand leads; and __fish_seen_subcommand_from list" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand leads; and __fish_seen_subcommand_from list" -l state-dir -d 'The state directory; overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand leads; and __fish_seen_subcommand_from list" -l admin-listen -d 'A running daemon\'s admin listener, asked when it holds the state directory' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand leads; and __fish_seen_subcommand_from list" -l format -r -f -a "human\t''
json\t''"
complete -c leadloop -n "__fish_leadloop_using_subcommand leads; and __fish_seen_subcommand_from list" -l stage -d 'Only leads in this stage, e.g. `marketing_qualified`' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand leads; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand leads; and __fish_seen_subcommand_from show" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand leads; and __fish_seen_subcommand_from show" -l state-dir -d 'The state directory; overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand leads; and __fish_seen_subcommand_from show" -l admin-listen -d 'A running daemon\'s admin listener, asked when it holds the state directory' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand leads; and __fish_seen_subcommand_from show" -l format -r -f -a "human\t''
json\t''"
complete -c leadloop -n "__fish_leadloop_using_subcommand leads; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand report; and not __fish_seen_subcommand_from funnel" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand report; and not __fish_seen_subcommand_from funnel" -f -a "funnel" -d 'Per stage: inventory now, flow in and out, conversion onward, median time in stage'
complete -c leadloop -n "__fish_leadloop_using_subcommand report; and __fish_seen_subcommand_from funnel" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand report; and __fish_seen_subcommand_from funnel" -l state-dir -d 'The state directory; overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand report; and __fish_seen_subcommand_from funnel" -l admin-listen -d 'A running daemon\'s admin listener, asked when it holds the state directory' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand report; and __fish_seen_subcommand_from funnel" -l format -r -f -a "human\t''
json\t''"
complete -c leadloop -n "__fish_leadloop_using_subcommand report; and __fish_seen_subcommand_from funnel" -l since -d 'The period, e.g. `30d`, `12w`' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand report; and __fish_seen_subcommand_from funnel" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand sla; and not __fish_seen_subcommand_from list show" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand sla; and not __fish_seen_subcommand_from list show" -f -a "list" -d 'List open hand-offs, oldest first'
complete -c leadloop -n "__fish_leadloop_using_subcommand sla; and not __fish_seen_subcommand_from list show" -f -a "show" -d 'A lead\'s hand-off state and full history'
complete -c leadloop -n "__fish_leadloop_using_subcommand sla; and __fish_seen_subcommand_from list" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand sla; and __fish_seen_subcommand_from list" -l state-dir -d 'The state directory; overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand sla; and __fish_seen_subcommand_from list" -l admin-listen -d 'A running daemon\'s admin listener, asked when it holds the state directory' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand sla; and __fish_seen_subcommand_from list" -l format -r -f -a "human\t''
json\t''"
complete -c leadloop -n "__fish_leadloop_using_subcommand sla; and __fish_seen_subcommand_from list" -l rep -d 'Only this rep\'s hand-offs' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand sla; and __fish_seen_subcommand_from list" -l overdue -d 'Only hand-offs whose status did not change before the first reminder'
complete -c leadloop -n "__fish_leadloop_using_subcommand sla; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand sla; and __fish_seen_subcommand_from show" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand sla; and __fish_seen_subcommand_from show" -l state-dir -d 'The state directory; overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand sla; and __fish_seen_subcommand_from show" -l admin-listen -d 'A running daemon\'s admin listener, asked when it holds the state directory' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand sla; and __fish_seen_subcommand_from show" -l format -r -f -a "human\t''
json\t''"
complete -c leadloop -n "__fish_leadloop_using_subcommand sla; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand email; and not __fish_seen_subcommand_from test preview" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand email; and not __fish_seen_subcommand_from test preview" -f -a "test" -d 'Send one message through the configured mailer and print the server\'s reply'
complete -c leadloop -n "__fish_leadloop_using_subcommand email; and not __fish_seen_subcommand_from test preview" -f -a "preview" -d 'Render a template with sample data, or with a stored lead\'s data'
complete -c leadloop -n "__fish_leadloop_using_subcommand email; and __fish_seen_subcommand_from test" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand email; and __fish_seen_subcommand_from test" -l to -d 'The recipient' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand email; and __fish_seen_subcommand_from test" -l state-dir -d 'The state directory (for `deliver = "directory"`); overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand email; and __fish_seen_subcommand_from test" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand email; and __fish_seen_subcommand_from preview" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand email; and __fish_seen_subcommand_from preview" -l template -d 'The template name, e.g. `sla_alert`' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand email; and __fish_seen_subcommand_from preview" -l lead -d 'A lead id to take the lead\'s data from the store' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand email; and __fish_seen_subcommand_from preview" -l state-dir -d 'The state directory; overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand email; and __fish_seen_subcommand_from preview" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand nurture; and not __fish_seen_subcommand_from list preview" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand nurture; and not __fish_seen_subcommand_from list preview" -f -a "list" -d 'The configured tracks: steps and schedules, catch-up, exits, and how many leads are in each'
complete -c leadloop -n "__fish_leadloop_using_subcommand nurture; and not __fish_seen_subcommand_from list preview" -f -a "preview" -d 'A lead\'s upcoming sends on a track, with dates and times in the lead\'s zone (from its enrolment, or as if it enrolled now)'
complete -c leadloop -n "__fish_leadloop_using_subcommand nurture; and __fish_seen_subcommand_from list" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand nurture; and __fish_seen_subcommand_from list" -l state-dir -d 'The state directory; overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand nurture; and __fish_seen_subcommand_from list" -l format -r -f -a "human\t''
json\t''"
complete -c leadloop -n "__fish_leadloop_using_subcommand nurture; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand nurture; and __fish_seen_subcommand_from preview" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand nurture; and __fish_seen_subcommand_from preview" -l lead -d 'The lead\'s id' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand nurture; and __fish_seen_subcommand_from preview" -l count -d 'How many sends to show' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand nurture; and __fish_seen_subcommand_from preview" -l state-dir -d 'The state directory; overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand nurture; and __fish_seen_subcommand_from preview" -l format -r -f -a "human\t''
json\t''"
complete -c leadloop -n "__fish_leadloop_using_subcommand nurture; and __fish_seen_subcommand_from preview" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand quarantine" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand quarantine" -l state-dir -d 'The state directory; overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand quarantine" -l admin-listen -d 'A running daemon\'s admin listener, asked when it holds the state directory' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand quarantine" -l format -r -f -a "human\t''
json\t''"
complete -c leadloop -n "__fish_leadloop_using_subcommand quarantine" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand pause" -l reason -d 'Why, for the guard\'s log' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand pause" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand pause" -l state-dir -d 'The state directory; overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand pause" -l admin-listen -d 'A running daemon\'s admin listener, asked when it holds the store' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand pause" -l format -r -f -a "human\t''
json\t''"
complete -c leadloop -n "__fish_leadloop_using_subcommand pause" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c leadloop -n "__fish_leadloop_using_subcommand resume" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand resume" -l state-dir -d 'The state directory; overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand resume" -l admin-listen -d 'A running daemon\'s admin listener, asked when it holds the store' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand resume" -l format -r -f -a "human\t''
json\t''"
complete -c leadloop -n "__fish_leadloop_using_subcommand resume" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c leadloop -n "__fish_leadloop_using_subcommand approve" -l sample -d 'How many held emails to show with --dry-run' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand approve" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand approve" -l state-dir -d 'The state directory; overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand approve" -l admin-listen -d 'A running daemon\'s admin listener, asked when it holds the store' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand approve" -l format -r -f -a "human\t''
json\t''"
complete -c leadloop -n "__fish_leadloop_using_subcommand approve" -l dry-run -d 'Show how many wait and a sample; change nothing'
complete -c leadloop -n "__fish_leadloop_using_subcommand approve" -l reject -d 'Drop the held nurture email instead of sending it (each entry records who decided)'
complete -c leadloop -n "__fish_leadloop_using_subcommand approve" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand crm; and not __fish_seen_subcommand_from dead-letters replay" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand crm; and not __fish_seen_subcommand_from dead-letters replay" -f -a "dead-letters" -d 'The writes the CRM refused for good (dead letters): lead, fields, the CRM\'s error and the attempts made'
complete -c leadloop -n "__fish_leadloop_using_subcommand crm; and not __fish_seen_subcommand_from dead-letters replay" -f -a "replay" -d 'Put dead letters back in the queue once their cause is fixed (e.g. a picklist value added); each lead\'s history records the replay and who made it'
complete -c leadloop -n "__fish_leadloop_using_subcommand crm; and __fish_seen_subcommand_from dead-letters" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand crm; and __fish_seen_subcommand_from dead-letters" -l state-dir -d 'The state directory; overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand crm; and __fish_seen_subcommand_from dead-letters" -l admin-listen -d 'A running daemon\'s admin listener, asked when it holds the state directory' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand crm; and __fish_seen_subcommand_from dead-letters" -l format -r -f -a "human\t''
json\t''"
complete -c leadloop -n "__fish_leadloop_using_subcommand crm; and __fish_seen_subcommand_from dead-letters" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand crm; and __fish_seen_subcommand_from replay" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand crm; and __fish_seen_subcommand_from replay" -l state-dir -d 'The state directory; overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand crm; and __fish_seen_subcommand_from replay" -l admin-listen -d 'A running daemon\'s admin listener, asked when it holds the state directory' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand crm; and __fish_seen_subcommand_from replay" -l format -r -f -a "human\t''
json\t''"
complete -c leadloop -n "__fish_leadloop_using_subcommand crm; and __fish_seen_subcommand_from replay" -l by -d 'Who replays, for the history; default: the login name (`$USER`)' -r
complete -c leadloop -n "__fish_leadloop_using_subcommand crm; and __fish_seen_subcommand_from replay" -l all -d 'Every dead letter'
complete -c leadloop -n "__fish_leadloop_using_subcommand crm; and __fish_seen_subcommand_from replay" -s h -l help -d 'Print help'
complete -c leadloop -n "__fish_leadloop_using_subcommand sync" -s c -l config -d 'The config file' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand sync" -l state-dir -d 'The state directory; overrides the config\'s' -r -F
complete -c leadloop -n "__fish_leadloop_using_subcommand sync" -l format -r -f -a "human\t''
json\t''"
complete -c leadloop -n "__fish_leadloop_using_subcommand sync" -l once -d 'Run one pass and exit (required: the daemon syncs continuously)'
complete -c leadloop -n "__fish_leadloop_using_subcommand sync" -s h -l help -d 'Print help'
