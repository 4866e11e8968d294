-- Database trade_log: matchengine's recovery data (operation log per day, slices).
-- Real tables are structural copies of the *_example templates.  The slices' amounts are
-- their exact decimal texts, where the original's columns were DECIMAL(30,8) to (30,16): a
-- balance of 20 decimals (BCH's prec_save) or a bid's freeze of 16 was rounded, and the state
-- restored from a slice differed from the one saved (matchengine.persist changes such older
-- templates at start).

CREATE TABLE IF NOT EXISTS `slice_order_example` (
    `id`            BIGINT UNSIGNED NOT NULL PRIMARY KEY,
    `t`             TINYINT UNSIGNED NOT NULL,
    `side`          TINYINT UNSIGNED NOT NULL,
    `create_time`   DOUBLE NOT NULL,
    `update_time`   DOUBLE NOT NULL,
    `user_id`       INT UNSIGNED NOT NULL,
    `market`        VARCHAR(30) NOT NULL,
    `price`         VARCHAR(80) NOT NULL,
    `amount`        VARCHAR(80) NOT NULL,
    `taker_fee`     VARCHAR(80) NOT NULL,
    `maker_fee`     VARCHAR(80) NOT NULL,
    `left`          VARCHAR(80) NOT NULL,
    `freeze`        VARCHAR(80) NOT NULL,
    `deal_stock`    VARCHAR(80) NOT NULL,
    `deal_money`    VARCHAR(80) NOT NULL,
    `deal_fee`      VARCHAR(80) NOT NULL,
    `source`        VARCHAR(30) NOT NULL DEFAULT ''
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `slice_balance_example` (
    `id`            INT UNSIGNED NOT NULL PRIMARY KEY AUTO_INCREMENT,
    `user_id`       INT UNSIGNED NOT NULL,
    `asset`         VARCHAR(30) NOT NULL,
    `t`             TINYINT UNSIGNED NOT NULL,
    `balance`       VARCHAR(80) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `slice_history` (
    `id`            INT UNSIGNED NOT NULL PRIMARY KEY AUTO_INCREMENT,
    `time`          BIGINT NOT NULL,
    `end_oper_id`   BIGINT UNSIGNED NOT NULL,
    `end_order_id`  BIGINT UNSIGNED NOT NULL,
    `end_deals_id`  BIGINT UNSIGNED NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS `operlog_example` (
    `id`            BIGINT UNSIGNED NOT NULL PRIMARY KEY,
    `time`          DOUBLE NOT NULL,
    `detail`        TEXT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
