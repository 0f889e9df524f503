#!/bin/sh
# Start redis-server with the ACL users of deploy/users.acl, their passwords taken from the
# environment (an ACL file cannot read it): each `user NAME` line but default's gets `#` and the
# SHA-256 of $REDIS_<NAME>_PASSWORD appended, so no password is written anywhere in clear, and
# demo-1 becomes $QUEUE_NAME. Arguments are passed on to redis-server.
#   WORKQUEUE_ACL_TEMPLATE  the file to read (default /etc/workqueue/users.acl)
#   WORKQUEUE_ACL_FILE      the file to write and load (default /tmp/workqueue-users.acl)
set -eu

template=${WORKQUEUE_ACL_TEMPLATE:-/etc/workqueue/users.acl}
rendered=${WORKQUEUE_ACL_FILE:-/tmp/workqueue-users.acl}
queue=${QUEUE_NAME:-demo-1}

# Names that need no escaping, neither for sed below nor in an ACL key pattern (* ? [ \).
case $queue in
    "" | *[!A-Za-z0-9._:-]*)
        echo "error: QUEUE_NAME must be letters, digits and . _ : - for deploy/redis-entrypoint.sh" >&2
        exit 2 ;;
esac

umask 077
sed "s/demo-1/$queue/g" "$template" | while IFS= read -r line || [ -n "$line" ]; do
    case $line in
        "user default "*) ;;  # stays disabled, with no password
        "user "*)
            name=${line#user }
            name=${name%% *}
            variable=REDIS_$(printf '%s' "$name" | tr '[:lower:]' '[:upper:]')_PASSWORD
            eval "password=\${$variable:-}"
            if [ -z "$password" ]; then
                echo "error: $variable is not set: the Redis user $name needs a password" >&2
                exit 2
            fi
            # printf is a shell builtin: the password is never on a command line.
            line="$line #$(printf '%s' "$password" | sha256sum | cut -d ' ' -f 1)" ;;
    esac
    printf '%s\n' "$line"
done > "$rendered"

exec redis-server "$@" --aclfile "$rendered"
