/* web/backup_cli.h: `gale --backup DEST` (backup_cli.c): asks the running instance of
 * cfg for an online backup and moves the snapshot to DEST. Blocking; returns the exit
 * status (0 done, 1 failed). */
#ifndef GALE_BACKUP_CLI_H
#define GALE_BACKUP_CLI_H

struct config;

int backup_cli(const struct config *cfg, const char *dest);

#endif
